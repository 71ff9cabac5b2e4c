"""The domain gate: is this a dermatoscopic image of a skin lesion, the only kind the models know?

`domain` holds the gate the app runs (DomainGate: one verdict, a score and a reason per image) and its
parameters; `net` the small device network ("taken through a dermatoscope?"); `objects` the everyday-object
check that reads Google's ImageNet EfficientNet-Lite0; `fit` fits and measures the gate (`python -m derm
fit-gate`, `gate-check`) on the images `negatives` draws and the sets `sets` names; `thresholds` chooses
every check's threshold together. Importing this package loads nothing heavy.
"""
