-- Run once by the postgres image on an empty data volume.
-- The "prefect" database is created by POSTGRES_DB; MLflow gets its own.
CREATE DATABASE mlflow;
