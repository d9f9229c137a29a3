"""Lossless compression with a VDM by bits-back ANS coding (VDM §3.3; Townsend et al. 2019).

chain.py (the T-step chain's constants) → coder.py (constriction ANS: pops and pushes) →
container.py (the .vdmz file) → api.py (a model's codec; the compress/decompress modes).
"""
