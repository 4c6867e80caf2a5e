"""Figures of the stages' diagnostics: pure functions from frames to matplotlib Figures (the
stages save them with pipelines.files.save_figure). One module per stage."""
