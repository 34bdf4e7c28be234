FROM python:3.11-slim
WORKDIR /opt/kft
ENV PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
COPY pyproject.toml README.md ./
COPY kft ./kft
COPY recipes ./recipes
COPY pretrained ./pretrained
RUN pip install --no-cache-dir .
# The quick start runs offline on data kft generates; mount /opt/kft/runs to keep the results.
CMD ["python", "-m", "kft.run", "recipes/quickstart.py"]
