# Shortcuts for the scripts the README documents.
.PHONY: up down test bootstrap
up:
	./scripts/up
down:
	./scripts/down
test:
	./scripts/test
bootstrap:
	./scripts/bootstrap-host
