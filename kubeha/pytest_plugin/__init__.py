"""The implementation of the kubeha pytest plugin, one concern per module; `kubeha.plugin` is the module pytest loads
and describes each of them."""
