"""Signed releases on the node: verify before anything is activated (:mod:`.verify`),
install beside the live release with an atomic rename (:mod:`.install`), and list or
switch the installed releases (:mod:`.store`)."""
