"""Planning: optimizer passes, splitting into fragments, plan objects."""
