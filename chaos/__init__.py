"""chaostoolkit experiments for kubeha: activities in `chaos.kubeha_chaos`, experiments in ``chaos/experiments/``.

Depends on `kubeha` and chaostoolkit-lib only; nothing in `kubeha` imports it.
"""
