"""Where jobs, records and leases are kept: the interfaces (``base``) and the SQLite and MongoDB backends."""
