#include <windows.h>
#include <stdio.h>

int main(void) {
HANDLE hMutex; 

hMutex = OpenMutex( 
    MUTEX_ALL_ACCESS,           // request full access
    FALSE,                      // handle not inheritable
    "NameOfMutexObject");       // object name

if (hMutex == NULL) 
    printf("OpenMutex error: %d\n", GetLastError() ); 
}
