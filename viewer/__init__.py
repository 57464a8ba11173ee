"""The Panel + HoloViews viewer of precomputed stores (built on the store format of ``pipeline``)."""
