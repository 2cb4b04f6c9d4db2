"""Fleet back ends on Redis: the only place redis-py is imported."""
