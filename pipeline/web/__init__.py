"""`tally serve`: the dashboard and its JSON API. The only package that imports the web
framework (Starlette) and server (uvicorn)."""
