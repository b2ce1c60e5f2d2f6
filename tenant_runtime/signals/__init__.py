"""Signal ingestion: sources and their grants, importers for exported files, and the clustering
of signals into candidate tasks."""
