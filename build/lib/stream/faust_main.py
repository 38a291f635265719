"""`faust -A stream.faust_main worker`: the one module that builds the app when imported, as
faust's ``-A`` expects. Everything else calls ``stream.worker.app.create_app`` itself."""
from stream.worker.app import create_app
from stream.settings import Settings

app = create_app(Settings.from_env())

if __name__ == "__main__":
    app.main()
