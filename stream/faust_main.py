"""`faust -A stream.faust_main worker`: the one module that builds the app when imported, as
faust's ``-A`` expects. Everything else calls ``stream.app.create_app`` itself."""
from .app import create_app
from .settings import Settings

app = create_app(Settings.from_env())

if __name__ == "__main__":
    app.main()
