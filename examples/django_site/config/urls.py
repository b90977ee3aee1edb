"""No pages: the example is about tasks."""

urlpatterns: list[object] = []
