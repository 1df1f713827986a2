"""The stage names a chain reports, in the order it runs them: from the study's stage graph
(``sweeps/graph.py``), as the chain runs it -- so a test cannot expect a stage list the
study no longer has."""

from lolaray.sweeps.chain import PROFILES
from lolaray.sweeps.graph import latent_chain, pixel_chain

LATENT_STAGES = latent_chain(PROFILES["smoke"], 4).names
PIXEL_STAGES = pixel_chain(PROFILES["smoke"]).names
