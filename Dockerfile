# The skipcache worker (and CLI) image.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY models ./models
COPY cache_warmer ./cache_warmer
COPY stream ./stream
RUN pip install --no-cache-dir .
RUN useradd --create-home skipcache && mkdir -p /data && chown skipcache /data
USER skipcache
ENTRYPOINT ["skipcache"]
CMD ["worker"]
