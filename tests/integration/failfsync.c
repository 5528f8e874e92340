/* SPDX-License-Identifier: MIT */
/* LD_PRELOAD shim for the reliability tests: fsync() and fdatasync() fail with
 * EIO while the file named by $TPSYNC_FAIL_FSYNC_FLAG exists. */
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

static int failing(void)
{
	const char *flag = getenv("TPSYNC_FAIL_FSYNC_FLAG");
	return flag && access(flag, F_OK) == 0;
}

/* Fails while the flag file exists, else calls the real function *real (looked up once). */
static int fail_or_call(int (**real)(int), const char *name, int fd)
{
	if (failing()) {
		errno = EIO;
		return -1;
	}
	if (!*real)
		*(void **)real = dlsym(RTLD_NEXT, name); /* POSIX's way around the object/function cast */
	return (*real)(fd);
}

int fsync(int fd)
{
	static int (*real)(int);
	return fail_or_call(&real, "fsync", fd);
}

int fdatasync(int fd)
{
	static int (*real)(int);
	return fail_or_call(&real, "fdatasync", fd);
}
