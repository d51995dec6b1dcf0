"""`tunesmith improve mine | data` (helper M fills this in)."""
