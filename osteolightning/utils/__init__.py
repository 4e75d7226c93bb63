"""Small shared helpers: atomic files, logging, config resolvers, run metadata."""
