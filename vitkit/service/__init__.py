"""`vitkit serve`: an HTTP service over one model (and optionally an image index) with micro-batching,
and a web page to try it. engine.py batches and runs the model; app.py builds the FastAPI app; cli.py adds
the command. Nothing heavy is imported here.

Try it:  vitkit serve --model vitkit/assets/digits-vit   # then open http://127.0.0.1:8000/
"""
