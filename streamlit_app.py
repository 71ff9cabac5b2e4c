"""`streamlit run streamlit_app.py`: diagnose a lesion photo, explore test-set errors, train and
promote models, read the model card. Pages only draw; the work is in derm/.
"""

from __future__ import annotations

import streamlit as st

import app_components as ui
from derm.weights import default_weights_dir

st.set_page_config(page_title="derm: skin lesion research demo", page_icon=":material/dermatology:", layout="wide")
# While a page runs, Streamlit's corner shows a running figure that JavaScript redraws several times a second, in
# every waiting browser (bench/load.py: several users at once on one machine). A still "Running…" instead.
st.html('<style>[data-testid="stStatusWidgetRunningIcon"] {display: none} [data-testid="stStatusWidget"] > div::before '
        '{content: "Running…"; font-size: 0.875rem; margin-right: 0.5rem; white-space: nowrap}</style>')


def show_weights_in_sidebar() -> None:
    """Which models answer: the folder, its code version and networks, or that there are none."""
    weights_dir = ui.active_weights_dir()
    manifest = ui.manifest_or_none(weights_dir)
    st.sidebar.markdown(f"**Weights** `{weights_dir}`")
    if manifest is None:
        st.sidebar.warning("No trained weights here (manifest.json missing).")
    else:
        st.sidebar.caption(f"code version {manifest.get('code_version', 'unknown')} · "
                           f"models: {', '.join(manifest['models'])}")
    if weights_dir != default_weights_dir():
        st.sidebar.info("Promoted weights are active in this browser session.")
        st.sidebar.button("Back to the shipped weights", on_click=ui.use_weights, args=(default_weights_dir(),))


def show_data_in_sidebar() -> None:
    """Which images the pages show: the full dataset, the shipped test split, or none."""
    source = ui.image_source_or_none()
    st.sidebar.markdown(f"**HAM10000**: {source.summary()}" if source else
                        "**HAM10000** not found (set $DERM_DATA): the explorer shows no images")


# The pages live in app_pages/, not pages/: with a pages/ folder beside this file, a fresh server
# serves a bookmarked /training by the legacy folder rules (this script skipped) until / is opened.
pages = [
    st.Page("app_pages/diagnose.py", title="Diagnose", icon=":material/biotech:", default=True),
    st.Page("app_pages/explorer.py", title="Test-set explorer", icon=":material/grid_view:"),
    st.Page("app_pages/training.py", title="Training", icon=":material/model_training:"),
    st.Page("app_pages/model_card.py", title="Model card", icon=":material/description:"),
]
page = st.navigation(pages)
show_weights_in_sidebar()
show_data_in_sidebar()
page.run()
