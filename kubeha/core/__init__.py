"""The pure core of kubeha: quorum arithmetic, topology data, outage windows, the fault budget and the result model.

Nothing here imports anything outside the Python standard library, so every rule can be tested exhaustively
without a cluster.
"""
