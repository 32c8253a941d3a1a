"""The generator families, one module each (the list the jobs read is
:data:`cac_align.gen.family.FAMILY_MODULES`), with their tiny layouts in :mod:`.tiny`."""
