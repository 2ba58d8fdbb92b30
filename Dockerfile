# Training image. CPU by default; for GPUs build with
#   --build-arg BASE_IMAGE=tensorflow/tensorflow:2.21.0-gpu
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

WORKDIR /opt/robustcl
COPY setup.cfg pyproject.toml README.md ./
COPY robustcl ./robustcl
RUN pip install --no-cache-dir .
COPY configs ./configs
COPY scripts ./scripts

# Data (an official CIFAR archive or folder) and run directories come from the host.
VOLUME ["/data", "/runs"]
ENTRYPOINT ["python", "scripts/train.py"]
CMD ["--flagfile=configs/pgd_at_cifar10.flags", "--data_dir=/data", "--model_dir=/runs/pgd_at_cifar10"]
