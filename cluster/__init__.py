"""The one Ray layer of the DCGAN service (Python name: dcgan_cluster): starting or joining
Ray, the TorchTrainer, Ray checkpoints, pre-flight checks, the Ray Train worker loop, the
metrics hub; and the deployment files (Prometheus, Grafana, compose, KubeRay)."""
