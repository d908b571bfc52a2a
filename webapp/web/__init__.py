"""The HTTP surface: who is asking and may they (keys, sign-ins, limits), the API's
and the page's blueprints, the history's routes, OpenAPI, metrics, the session
cookie and the worker's write path. Imports the layers below; nothing imports it
but the app factory."""
