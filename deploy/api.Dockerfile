# The example Flask API (examples/flask-api/app.py) as the compose file's
# upstream. Build context: the repository root.
FROM python:3.13-slim
RUN pip install --no-cache-dir flask==3.1.* flask-cors==6.0.* \
	&& useradd --system --uid 10001 api
COPY examples/flask-api/app.py /app/app.py
USER 10001
EXPOSE 5000
CMD ["python", "/app/app.py", "--host", "0.0.0.0", "--port", "5000"]
