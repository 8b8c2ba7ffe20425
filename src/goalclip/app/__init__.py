"""``goalclip serve``: the local web page (optional extra ``goalclip[app]``: starlette + uvicorn)."""
