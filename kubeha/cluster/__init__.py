"""Talking to the cluster under test: API clients from a kubeconfig path (`client`), who the cluster is
(`identity`), what it is made of (`discovery`), and whether it is in its steady state (`health`)."""
