"""Pictures: cell diagrams (``draw``), search and training reports and the zoo page (``report``, ``zoo``)."""
