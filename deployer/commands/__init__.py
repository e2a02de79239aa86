"""Thin click commands; each module registers its commands on the root group in deployer.cli."""
