"""Building blocks of the ``second_order`` model (ITA / IEL): adapters, penalties, Fisher, pre-tuning, heads."""
