"""The GPU node kit: offline bundle (bundle.py), install step (install_bundle.sh), acceptance run
(check.sh) and its report (report.py)."""
