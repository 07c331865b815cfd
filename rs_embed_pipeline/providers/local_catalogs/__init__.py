"""Static STAC catalogs this project writes, for ``LocalStacProvider`` to read: the synthetic demo and
test catalog (``synthetic.generate_synthetic_catalog``), a catalog of the user's own scenes
(``user_scenes``) and the writer both use (``static_catalog``). Not imagery providers themselves."""
