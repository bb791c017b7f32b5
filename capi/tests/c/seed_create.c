#include <windows.h>
#include <stdio.h>

int main(void) {
HANDLE hMutex; 

// Create a mutex with no initial owner.

hMutex = CreateMutex( 
    NULL,                       // default security attributes
    FALSE,                      // initially not owned
    "NameOfMutexObject");       // name of mutex

if (hMutex == NULL) 
{
    printf("CreateMutex error: %d\n", GetLastError() ); 
}
else 
{
    if ( GetLastError() == ERROR_ALREADY_EXISTS ) 
        printf("CreateMutex opened existing mutex\n"); 
    else printf("CreateMutex created new mutex\n");
}
}
