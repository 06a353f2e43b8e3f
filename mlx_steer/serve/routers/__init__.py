"""One router per resource: models, vectors, chat completions, completions, health, playground."""
