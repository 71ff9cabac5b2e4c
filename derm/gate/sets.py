"""The named image sets the domain gate is checked on, by the verdict each should get (derm.gate.fit
says what each holds). Apart from derm.gate.fit so that the CLI's help lists them without loading it."""

from __future__ import annotations

SHOULD_ACCEPT = ("ham_val", "ham_test", "isic_val", "isic_test", "derm7pt_report", "derm7pt")
SHOULD_REFUSE = ("clinical_report", "clinical_all", "skimage", "drawn_screens", "drawn_blank")
