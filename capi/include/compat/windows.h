/*
 * windows.h for Linux: code written for Windows that includes <windows.h> for its named
 * mutexes, events, semaphores and waits compiles unchanged with `cc -I<capi>/include/compat`.
 * Everything is declared by dlock/windows.h (found relative to this file).
 */
#ifndef DLOCK_COMPAT_WINDOWS_H
#define DLOCK_COMPAT_WINDOWS_H
#include "../dlock/windows.h"
#endif
