"""Pydantic models of the public JSON: what the API accepts and answers, shared with services."""
