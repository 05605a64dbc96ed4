"""Feedback sources: turn a task and an attempt into an experience with rich text feedback."""
