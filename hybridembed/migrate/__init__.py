"""Re-embedding a live corpus when the model changes: a resumable, kill-safe,
reversible backfill of a user's PostgreSQL table, and blue-green rebuilds of Qdrant
collections."""
