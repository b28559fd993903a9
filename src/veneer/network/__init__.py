"""The nat network's mechanics, one module per concern, each `setup_*` paired with an idempotent `remove_*`:
addresses and the stored network config (ipam.py), the bridge, veth pairs and namespaces (links.py), the
nftables table (nat.py), names and DNS through dnsmasq (dns.py), and what stops networking here
(doctor.py). Which machines are on the network, and when, is decided in `veneer.machines`, not here.
"""
