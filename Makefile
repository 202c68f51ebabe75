# make install [PREFIX=/usr/local] [DESTDIR=]: tools/install (docs/INSTALL.md); make uninstall
# removes what it installed; make test: tools/test, the whole test suite (needs root).
PREFIX ?= /usr/local
DESTDIR ?=

.PHONY: install uninstall test

install:
	tools/install --prefix "$(PREFIX)" --destdir "$(DESTDIR)"

uninstall:
	tools/install --uninstall --prefix "$(PREFIX)" --destdir "$(DESTDIR)"

test:
	tools/test
