//! Making typed handles: [`Session`]'s constructors, and the one place the typed API routes a
//! name to a backend ([`crate::route`]).

use super::host::make_local;
use super::*;

/// A typed handle's parts, whichever backend made them.
pub(super) struct Made {
    pub(super) backing: Backing,
    /// A local mutex's owner thread.
    pub(super) owner: Option<Owner>,
    /// What the creating call acquired (a new mutex with `initial_owner`).
    pub(super) hold: Hold,
}

impl Made {
    pub(super) fn mutex(self) -> Mutex {
        Mutex {
            backing: self.backing,
            hold: StdMutex::new(self.hold),
            owner: self.owner,
        }
    }

    pub(super) fn event(self) -> Event {
        Event {
            backing: self.backing,
        }
    }

    pub(super) fn semaphore(self) -> Semaphore {
        Semaphore {
            backing: self.backing,
        }
    }
}

/// The hold of a creating call that acquired a new mutex with this token.
pub(super) fn created_hold(owned: bool, fencing_token: u64) -> Hold {
    let mut hold = Hold::default();
    if owned {
        hold.recursion = 1;
        hold.fencing_token = fencing_token;
    }
    hold
}

impl Session {
    fn base(&self, handle: u64, already_existed: bool) -> Backing {
        Backing::Remote(Base {
            session: self.clone(),
            handle,
            already_existed,
        })
    }

    /// Creates (`Some(params)`) or opens (`None`) the object `name` of type `kind` with the
    /// type's `…_ALL_ACCESS`: the one place the typed API routes a name ([`route`]).
    async fn make(
        &self,
        kind: ObjectKind,
        name: Option<&str>,
        create: Option<CreateParams>,
    ) -> Result<Made, Error> {
        let key = match route(name).map_err(Error::Win32)? {
            Route::Local(key) => return make_local(kind, key, create).await,
            Route::Cluster => name,
        };
        let access = kind.all_access();
        let Some(params) = create else {
            // An open always has a name (the constructors take `&str`).
            let handle = self.open(kind, key.unwrap_or_default(), access).await?;
            return Ok(Made {
                backing: self.base(handle, false),
                owner: None,
                hold: Hold::default(),
            });
        };
        let created = self
            .create(TYPED_OWNER_THREAD_ID, key, params, access)
            .await?;
        let owned = params.initial_owner() && !created.already_existed;
        Ok(Made {
            backing: self.base(created.handle, created.already_existed),
            owner: None,
            hold: created_hold(owned, created.fencing_token),
        })
    }

    /// Creates or opens a named mutex (`CreateMutex`); `None` or `""` makes an unnamed one.
    /// With `initial_owner`, a *new* mutex starts owned by this session's typed owner (not an
    /// existing one: check [`Mutex::already_existed`]).
    ///
    /// # Errors
    ///
    /// As [`Session::create`].
    ///
    /// ```no_run
    /// # async fn demo(session: dlock::Session) -> Result<(), dlock::Error> {
    /// let m = session.create_mutex(Some("leader-election"), true).await?;
    /// if !m.already_existed() {
    ///     println!("we own it, token {:?}", m.fencing_token());
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn create_mutex(
        &self,
        name: Option<&str>,
        initial_owner: bool,
    ) -> Result<Mutex, Error> {
        let params = CreateParams::Mutex { initial_owner };
        Ok(self
            .make(ObjectKind::Mutex, name, Some(params))
            .await?
            .mutex())
    }

    /// Opens an existing named mutex with `MUTEX_ALL_ACCESS` (`OpenMutex`).
    ///
    /// # Errors
    ///
    /// As [`Session::open`] (2 if there is no such name, 6 if it is another type).
    pub async fn open_mutex(&self, name: &str) -> Result<Mutex, Error> {
        Ok(self
            .make(ObjectKind::Mutex, Some(name), None)
            .await?
            .mutex())
    }

    /// Creates or opens a named event (`CreateEvent`); an existing event keeps its type and
    /// state.
    ///
    /// # Errors
    ///
    /// As [`Session::create`].
    pub async fn create_event(
        &self,
        name: Option<&str>,
        manual_reset: bool,
        initial_state: bool,
    ) -> Result<Event, Error> {
        let params = CreateParams::Event {
            manual_reset,
            initial_state,
        };
        Ok(self
            .make(ObjectKind::Event, name, Some(params))
            .await?
            .event())
    }

    /// Opens an existing named event with `EVENT_ALL_ACCESS` (`OpenEvent`).
    ///
    /// # Errors
    ///
    /// As [`Session::open`].
    pub async fn open_event(&self, name: &str) -> Result<Event, Error> {
        Ok(self
            .make(ObjectKind::Event, Some(name), None)
            .await?
            .event())
    }

    /// Creates or opens a named semaphore (`CreateSemaphore`). The counts are validated even
    /// when the name exists (87), and otherwise ignored for an existing semaphore.
    ///
    /// # Errors
    ///
    /// As [`Session::create`].
    pub async fn create_semaphore(
        &self,
        name: Option<&str>,
        initial_count: i32,
        maximum_count: i32,
    ) -> Result<Semaphore, Error> {
        let params = CreateParams::Semaphore {
            initial: initial_count,
            max: maximum_count,
        };
        Ok(self
            .make(ObjectKind::Semaphore, name, Some(params))
            .await?
            .semaphore())
    }

    /// Opens an existing named semaphore with `SEMAPHORE_ALL_ACCESS` (`OpenSemaphore`).
    ///
    /// # Errors
    ///
    /// As [`Session::open`].
    pub async fn open_semaphore(&self, name: &str) -> Result<Semaphore, Error> {
        Ok(self
            .make(ObjectKind::Semaphore, Some(name), None)
            .await?
            .semaphore())
    }
}
