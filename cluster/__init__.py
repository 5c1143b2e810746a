"""The one Ray layer of the DCGAN service (Python name: dcgan_cluster): starting or joining
Ray, the TorchTrainer, Ray checkpoints, pre-flight checks, the Ray Train worker loop, the
actor hosting a sink's service on the driver's node; and the deployment files (Prometheus, Grafana, compose, KubeRay)."""
