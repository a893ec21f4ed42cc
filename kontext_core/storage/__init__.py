"""Where bytes live beyond the project's disk: S3 (and S3-compatible stores) through boto3."""
