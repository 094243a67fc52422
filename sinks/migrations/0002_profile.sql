-- The customer's profile data (personal data: set to NULL when the customer is excluded).
ALTER TABLE customers ADD COLUMN birth_date date;
ALTER TABLE customers ADD COLUMN registered_at timestamptz;
