"""``sitecustomize`` for child interpreters that must not see an installed torch (see ``sitecustomize.hide``)."""
