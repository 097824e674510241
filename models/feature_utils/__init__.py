"""Feature statistics shared by the methods that fit heads on frozen features (``slca``, ``ranpac``)."""
