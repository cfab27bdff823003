"""MLflow tracking: the store and its experiments (``store``), what runs and metrics are
called (``names``), one run of the pipeline (``run``) and the watchdog that ends a run
whose process died (``watchdog``)."""
