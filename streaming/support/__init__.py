"""What the stages run on: the clients of Google's services (or the emulators), an
ordered thread pool for per-element I/O, the progress a local run shows, and the
project's only patches of other libraries' private APIs."""
